//! The PROXY protocol, v1 (text) and v2 (binary), as haproxy's `doc/proxy-protocol.txt` defines
//! it: the header a proxy puts first on a connection to tell the server who the client was.
//! This module is the codec; when to send or require a header is the caller's business.
//!
//! # Sending
//!
//! The main process knows, before it forks, the client's address and the address the client
//! connected to. It builds a [`Header`] with [`Header::new`] (or [`Header::unknown`]) there; the
//! header is `Copy` and fixed-size ([`HEADER_CAPACITY`](encode::HEADER_CAPACITY) = 108 bytes: a v1 line is at most 107, a v2
//! header without TLVs at most 52), so the connection process takes it across the fork and writes
//! [`Header::as_bytes`] on the inward socket before any data, with no allocation.
//!
//! Families: IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`, what a dual-stack listener reports for
//! an IPv4 client) are sent as IPv4. If the two sides still differ, the IPv4 one is sent as mapped
//! IPv6 (TCP6 / AF_INET6) — not `PROXY UNKNOWN` / AF_UNSPEC: the spec reserves UNKNOWN for when
//! the line cannot be filled correctly and warns that receivers may refuse it, and haproxy's own
//! sender widens the same way. [`Header::unknown`] is for a caller that has no addresses (v1
//! `UNKNOWN`; v2 LOCAL, the only form haproxy accepts, see there).
//!
//! # Accepting
//!
//! The listener peeks at the first bytes and calls [`parse`] each time more arrive:
//! [`Parse::Incomplete`] for every proper prefix of a valid header, [`Parse::Done`] with the
//! length to consume and the addresses, or [`Parse::Invalid`] as soon as no continuation could be
//! valid (and then for every continuation). [`could_be_header`](decode::could_be_header) is the signature test alone.
//! v2 TLVs are walked and skipped (they must tile the header exactly); a CRC32C TLV is verified.
//! A v2 header longer than [`DEFAULT_MAX_HEADER_LEN`] (16 KiB; [`parse_with_limit`](decode::parse_with_limit) takes another
//! cap) is `Invalid(Oversized)` as soon as its length field is in. A LOCAL command has no
//! addresses; whether to accept one is the caller's decision.
//!
//! # Why not the `ppp` crate
//!
//! `ppp` 2.3 was tried against the constraints above and hand-writing won:
//! * it reports a proper prefix of a valid v1 line as a final error
//!   (`PROXY TCP4 1.2.3.4 5.6.7.8 80 ` → `InvalidDestinationPort`), so a header that arrives in
//!   pieces would be refused — the one thing an incremental parser must get right;
//! * it accepts what the spec forbids: a `+80` port (it uses `u16::from_str`), TLVs that run past
//!   the header's length, and any v2 length up to 65535 with no cap (it waits for them);
//! * it neither checks CRC32C nor can write into a fixed buffer (`Builder` returns a `Vec`), so
//!   a copy step and a checksum would be ours anyway; and it brings `thiserror` 1 and `syn` 2.
//!
//! The hand-written codec is small, allocation-free on both sides, and tested with the spec's
//! examples and with headers captured from a real haproxy (see the tests).

mod crc32c;
mod decode;
mod encode;
mod parse_v1;
mod parse_v2;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_interop;

pub use decode::{DEFAULT_MAX_HEADER_LEN, Invalid, Parse, parse};
pub use encode::Header;
// The rest of the codec's interface, which portfwd itself does not call (its tests do).
#[cfg(test)]
pub use decode::{could_be_header, parse_with_limit};
#[cfg(test)]
pub use encode::HEADER_CAPACITY;

/// Which of the two header formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// The text line, `PROXY TCP4 ...\r\n`.
    V1,
    /// The binary header, starting with [`V2_SIGNATURE`].
    V2,
}

/// What the sender says the connection is (v1 has only `Proxy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Made by the proxy itself (e.g. a health check): use the real endpoints.
    Local,
    /// Relayed on behalf of a client, whose addresses the header gives.
    Proxy,
}

/// The start of every v1 header.
pub const V1_PREFIX: &[u8; 6] = b"PROXY ";
/// The longest v1 line the spec allows, CRLF included.
pub const V1_MAX_LEN: usize = 107;
/// The start of every v2 header.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// Signature, version/command, family/protocol and the 2-byte length.
pub const V2_FIXED_LEN: usize = 16;
