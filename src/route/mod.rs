//! Routing on what the client says first (sslh-style protocol multiplexing on one port).

mod condition;
pub mod host;
pub mod http;
pub mod tls;

#[cfg(test)]
mod captured;

pub use condition::Condition;
pub use host::HostPattern;

/// The most bytes looked at: the event loop peeks at most this many. A condition that would
/// need more than this (a ClientHello or HTTP header section that does not fit) fails.
pub const PEEK_LIMIT: usize = 16 * 1024;

/// The outcome of reading a structure from the start of the bytes: complete, impossible, or
/// still possible.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scan<T> {
    Done(T),
    Invalid,
    Partial,
}

impl<T> Scan<T> {
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Scan<U> {
        match self {
            Scan::Done(t) => Scan::Done(f(t)),
            Scan::Invalid => Scan::Invalid,
            Scan::Partial => Scan::Partial,
        }
    }
}
