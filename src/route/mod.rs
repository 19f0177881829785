//! Routing on what the client says first (sslh-style protocol multiplexing on one port).

mod condition;
pub mod host;

pub use condition::Condition;
pub use host::HostPattern;

/// The most bytes looked at: the event loop peeks at most this many. A condition that would
/// need more than this (a ClientHello or HTTP header section that does not fit) fails.
pub const PEEK_LIMIT: usize = 16 * 1024;
