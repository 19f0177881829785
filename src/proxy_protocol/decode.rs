//! Reading a header from the first bytes of a connection, peeked (`MSG_PEEK`) as they arrive:
//! [`parse`] says whether they hold a whole header, need more, or can never become one.

use super::{Command, V1_PREFIX, V2_SIGNATURE, Version, parse_v1, parse_v2};
use std::fmt;
use std::net::SocketAddr;

/// The longest v2 header [`parse`] accepts, TLVs included. The spec allows 16 + 65535 bytes, but
/// nothing portfwd needs is more than 16 + 216 (AF_UNIX addresses) and a caller peeks into a
/// bounded buffer: 16 KiB, so a sender cannot make it wait for bytes it will never peek.
pub const DEFAULT_MAX_HEADER_LEN: usize = 16 * 1024;

/// The verdict on the bytes received so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parse {
    /// A prefix of a valid header: peek again when more bytes arrive.
    Incomplete,
    /// A whole valid header, the first `header_len` bytes (TLVs included): consume exactly those,
    /// the rest is the client's data. `source` and `destination` are both `Some` or both `None`.
    /// `None` with [`Command::Proxy`] means the sender did not give TCP addresses (v1 `UNKNOWN`,
    /// v2 AF_UNSPEC, AF_UNIX or UDP): the spec lets the receiver use the real connection's
    /// addresses or refuse it. [`Command::Local`] (a health check by the proxy itself) never
    /// carries addresses; whether to accept it is the caller's decision.
    Done {
        header_len: usize,
        version: Version,
        command: Command,
        source: Option<SocketAddr>,
        destination: Option<SocketAddr>,
    },
    /// No bytes appended to these can make a valid header: drop the connection.
    Invalid(Invalid),
}

/// Why bytes are not a PROXY header. Once [`parse`] says `Invalid`, it says so for every
/// extension of the same bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalid {
    /// Starts with neither `PROXY ` nor the v2 signature.
    Signature,
    /// v1: no CRLF within the first 107 bytes.
    V1TooLong,
    /// v1: a CR not followed by LF, an LF alone, a missing or extra field, a stray character.
    V1Syntax,
    /// v1: the protocol is not `TCP4`, `TCP6` or `UNKNOWN`.
    V1Protocol,
    /// v1: an address that is not in its family's canonical form (e.g. leading zeros in IPv4).
    V1Address,
    /// v1: a port that is not a decimal from 0 to 65535 without leading zeros.
    V1Port,
    /// v2: the version nibble is not 2.
    V2Version,
    /// v2: the command is neither LOCAL nor PROXY.
    V2Command,
    /// v2: the family/protocol byte is not one of the spec's seven combinations.
    V2Family,
    /// v2: the length field is too short for the address family.
    V2Length,
    /// v2: a TLV runs past the end of the header, or bytes are left over that cannot be one.
    V2Tlv,
    /// v2: a PP2_TYPE_CRC32C TLV that is not 4 bytes, appears twice, or does not match.
    V2Checksum,
    /// v2: longer than the limit given to [`parse_with_limit`].
    Oversized,
}

impl Invalid {
    /// A short name for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Invalid::Signature => "not a PROXY protocol header",
            Invalid::V1TooLong => "v1 line without CRLF in 107 bytes",
            Invalid::V1Syntax => "malformed v1 line",
            Invalid::V1Protocol => "v1 protocol not TCP4, TCP6 or UNKNOWN",
            Invalid::V1Address => "malformed v1 address",
            Invalid::V1Port => "malformed v1 port",
            Invalid::V2Version => "v2 version not 2",
            Invalid::V2Command => "v2 command not LOCAL or PROXY",
            Invalid::V2Family => "v2 address family or protocol unknown",
            Invalid::V2Length => "v2 length too short for its address family",
            Invalid::V2Tlv => "malformed v2 TLV",
            Invalid::V2Checksum => "v2 CRC32C mismatch",
            Invalid::Oversized => "oversized",
        }
    }
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether `bytes` can still be the start of a header: they agree with `PROXY ` or with the v2
/// signature as far as both go. False is final: the connection does not speak the protocol.
pub fn could_be_header(bytes: &[u8]) -> bool {
    let agrees = |sig: &[u8]| {
        let n = bytes.len().min(sig.len());
        bytes[..n] == sig[..n]
    };
    agrees(V1_PREFIX) || agrees(&V2_SIGNATURE)
}

/// [`parse_with_limit`] with [`DEFAULT_MAX_HEADER_LEN`].
pub fn parse(bytes: &[u8]) -> Parse {
    parse_with_limit(bytes, DEFAULT_MAX_HEADER_LEN)
}

/// Parses the bytes received so far (v1 or v2, whichever their start says). A v2 header whose
/// length field makes it longer than `max_header_len` bytes is `Invalid(Oversized)` as soon as its
/// first 16 bytes are in; a v1 line is at most 107 bytes by the spec, whatever the limit.
pub fn parse_with_limit(bytes: &[u8], max_header_len: usize) -> Parse {
    if bytes.starts_with(V1_PREFIX) {
        parse_v1::parse(bytes)
    } else if bytes.starts_with(&V2_SIGNATURE) {
        parse_v2::parse(bytes, max_header_len)
    } else if could_be_header(bytes) {
        Parse::Incomplete
    } else {
        Parse::Invalid(Invalid::Signature)
    }
}
