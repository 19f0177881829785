//! Routing on what the client says first (sslh-style protocol multiplexing on one port).

pub mod host;

pub use host::HostPattern;
