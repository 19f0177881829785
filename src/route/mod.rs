//! Routing on what the client says first (sslh-style protocol multiplexing on one port): given
//! the routes of one listener, in file order, and the bytes a waiting client has sent so far,
//! which route do they select?
//!
//! ```text
//! 443 -> 127.0.0.1:22        when=ssh
//! 443 -> 127.0.0.1:8443      when=tls:*.example.com
//! 443 -> 127.0.0.1:9443      when=tls
//! 443 -> 127.0.0.1:8080      when=http:intranet.example.com
//! 443 -> 127.0.0.1:8081      when=http
//! 443 -> 127.0.0.1:2525      when=timeout:3
//! ```
//!
//! This module only decides; it performs no I/O. It runs in the main process, on bytes the event
//! loop has read with `MSG_PEEK` (at most [`PEEK_LIMIT`] of them) from a client that is still
//! waiting for its connection process, so the bytes stay in the socket for the backend. It
//! allocates, which is why it must never be called in a forked child.
//!
//! Each [`Condition`] says [`Verdict::Match`], [`Verdict::NoMatch`] or [`Verdict::NeedMore`] of
//! the bytes so far, and those verdicts are final: once a condition has matched or failed on some
//! bytes, more bytes never change it. [`decide`] takes the first route that matches, but only once
//! every route before it has failed: an earlier route that still needs more bytes holds the
//! decision (an `any` after an `ssh` waits until the first four bytes show that they are not
//! `SSH-`). When no more bytes can come (an EOF, or [`PEEK_LIMIT`] bytes waiting), needing more
//! means failing.
//!
//! TLS ClientHellos are read with the `tls-parser` crate (see [`tls`] for how, and for the
//! reassembly of a ClientHello split over several records, which the crate leaves to its
//! callers); SSH, HTTP/1.x and prefixes are simple enough to read by hand.
//!
//! The event loop's part, in short: keep a waiting client's socket in the epoll set; on each
//! readiness (or EOF) peek up to [`PEEK_LIMIT`] bytes and call [`decide`]; on `Route(i)` hand the
//! client to route `i`, on `NoMatch` close (or reset) it, on `NeedMore` keep waiting. While the
//! client has sent nothing, [`timeout_route`] says which route a silent client gets, and when.

mod condition;
pub mod host;
pub mod http;
pub mod tls;

#[cfg(test)]
mod captured;
#[cfg(test)]
mod decide_tests;

pub use condition::Condition;
pub use host::HostPattern;

use std::time::Duration;

/// The most bytes looked at: the event loop peeks at most this many. A condition that would
/// need more than this (a ClientHello or HTTP header section that does not fit) fails.
pub const PEEK_LIMIT: usize = 16 * 1024;

/// What one condition says of the bytes so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Match,
    NoMatch,
    /// Not decided yet: more bytes will decide.
    NeedMore,
}

/// What a listener's routes say of the bytes so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Route by this index in the list given to [`decide`].
    Route(usize),
    /// Wait for more bytes (or an EOF).
    NeedMore,
    /// No route can match, now or later.
    NoMatch,
}

/// The outcome of reading a structure from the start of the bytes: complete, impossible, or
/// still possible.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scan<T> {
    Done(T),
    Invalid,
    Partial,
}

impl<T> Scan<T> {
    /// (Only the tests need it: the product matches on scans.)
    #[cfg(test)]
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Scan<U> {
        match self {
            Scan::Done(t) => Scan::Done(f(t)),
            Scan::Invalid => Scan::Invalid,
            Scan::Partial => Scan::Partial,
        }
    }
}

impl Condition {
    /// What this condition says of `bytes` (the start of the stream; only the first
    /// [`PEEK_LIMIT`] are looked at). `eof`: nothing more will come.
    pub fn verdict(&self, bytes: &[u8], eof: bool) -> Verdict {
        let (bytes, at_limit) = clamp(bytes);
        let last = eof || at_limit;
        let verdict = match self {
            Condition::Any if bytes.is_empty() && !last => Verdict::NeedMore,
            Condition::Any => Verdict::Match,
            Condition::Ssh => starts_with(bytes, b"SSH-"),
            Condition::Prefix(prefix) => starts_with(bytes, prefix),
            Condition::Tls(pattern) => match tls::client_hello(bytes, PEEK_LIMIT) {
                Scan::Done(hello) => matches(pattern.as_ref(), hello.sni.as_deref()),
                Scan::Invalid => Verdict::NoMatch,
                Scan::Partial => Verdict::NeedMore,
            },
            Condition::Http(None) => match http::request_line(bytes) {
                Scan::Done(_) => Verdict::Match,
                Scan::Invalid => Verdict::NoMatch,
                Scan::Partial => Verdict::NeedMore,
            },
            Condition::Http(Some(pattern)) => match http::request(bytes) {
                Scan::Done(req) => matches(Some(pattern), req.host.as_deref()),
                Scan::Invalid => Verdict::NoMatch,
                Scan::Partial => Verdict::NeedMore,
            },
            Condition::Timeout(_) => Verdict::NoMatch,
        };
        if verdict == Verdict::NeedMore && last {
            Verdict::NoMatch
        } else {
            verdict
        }
    }

    /// Is this a `timeout:` condition, which the event loop's timer decides rather than bytes?
    pub fn timeout(&self) -> Option<Duration> {
        match self {
            Condition::Timeout(d) => Some(*d),
            _ => None,
        }
    }
}

/// Which of `conditions` (a listener's routes, in file order) do `bytes` select? `bytes` are the
/// start of the stream as peeked (only the first [`PEEK_LIMIT`] are looked at; at the limit no
/// more are expected); `eof`: the client has half-closed, nothing more will come.
///
/// `Route(i)` for the first condition that matches, once every one before it has failed;
/// `NeedMore` while a condition not yet failed needs more bytes and none before it matched;
/// `NoMatch` when every condition has failed. `timeout:` conditions never match here. For the
/// same `conditions`, the answer for a longer `bytes` (without `eof`) keeps a `Route` or `NoMatch`
/// given for a shorter one.
pub fn decide(conditions: &[Condition], bytes: &[u8], eof: bool) -> Decision {
    for (i, condition) in conditions.iter().enumerate() {
        match condition.verdict(bytes, eof) {
            Verdict::Match => return Decision::Route(i),
            Verdict::NeedMore => return Decision::NeedMore,
            Verdict::NoMatch => {}
        }
    }
    Decision::NoMatch
}

/// The route a client that has sent nothing gets, and after how long: the shortest `timeout:`
/// (the first of equals); `None` if there is none.
pub fn timeout_route(conditions: &[Condition]) -> Option<(usize, Duration)> {
    conditions
        .iter()
        .enumerate()
        .filter_map(|(i, c)| c.timeout().map(|d| (i, d)))
        .min_by_key(|&(i, d)| (d, i))
}

/// The SNI host name of the ClientHello at the start of `bytes` (lower-cased), for the log; `None`
/// if they are not a complete ClientHello with a well-formed name.
pub fn sni(bytes: &[u8]) -> Option<String> {
    match tls::client_hello(clamp(bytes).0, PEEK_LIMIT) {
        Scan::Done(hello) => hello.sni,
        _ => None,
    }
}

/// Checks one listener's routes, in file order, for routes that can never be taken; the error
/// names them by their 0-based index. For the config reader, which knows the line numbers.
pub fn check_routes(conditions: &[Condition]) -> Result<(), (usize, String)> {
    for (j, later) in conditions.iter().enumerate() {
        for earlier in &conditions[..j] {
            let shadowed = match (earlier, later) {
                (Condition::Timeout(_), Condition::Timeout(_)) => {
                    return Err((j, "a listener can have only one 'when=timeout:' route".into()));
                }
                (Condition::Timeout(_), _) | (_, Condition::Timeout(_)) => false,
                (Condition::Any, _) => true,
                (Condition::Tls(None), Condition::Tls(_)) | (Condition::Http(None), Condition::Http(_)) => true,
                (Condition::Prefix(a), Condition::Prefix(b)) => b.starts_with(a),
                (Condition::Prefix(a), Condition::Ssh) => b"SSH-".starts_with(a),
                (Condition::Ssh, Condition::Prefix(b)) => b.starts_with(b"SSH-"),
                _ => earlier == later,
            };
            if shadowed {
                return Err((
                    j,
                    format!("'when={later}' can never be chosen: 'when={earlier}' comes before it"),
                ));
            }
        }
    }
    Ok(())
}

/// At most the first [`PEEK_LIMIT`] bytes, and whether the limit is reached.
fn clamp(bytes: &[u8]) -> (&[u8], bool) {
    (&bytes[..bytes.len().min(PEEK_LIMIT)], bytes.len() >= PEEK_LIMIT)
}

fn starts_with(bytes: &[u8], prefix: &[u8]) -> Verdict {
    let n = bytes.len().min(prefix.len());
    if bytes[..n] != prefix[..n] {
        Verdict::NoMatch
    } else if n == prefix.len() {
        Verdict::Match
    } else {
        Verdict::NeedMore
    }
}

/// A complete message with this host name (if any): does it match `pattern` (none: anything)?
fn matches(pattern: Option<&HostPattern>, host: Option<&str>) -> Verdict {
    match (pattern, host) {
        (None, _) => Verdict::Match,
        (Some(p), Some(h)) if p.matches(h) => Verdict::Match,
        _ => Verdict::NoMatch,
    }
}
