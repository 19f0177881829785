//! Building a header: in the main process, before the fork, into a fixed buffer the connection
//! process can copy and send as it is (no allocation on either side).

use super::{V2_SIGNATURE, Version};
use std::fmt::{self, Write};
use std::net::{IpAddr, SocketAddr, SocketAddrV4, SocketAddrV6};

/// Bytes a [`Header`] can hold: the longest v1 line is 107 bytes (the spec's 108-byte buffer
/// minus its trailing NUL); a v2 header without TLVs is at most 16 + 36 = 52.
pub const HEADER_CAPACITY: usize = 108;

/// An encoded PROXY header, `Copy` and fixed-size so that it can be handed to a forked child.
#[derive(Clone, Copy)]
pub struct Header {
    bytes: [u8; HEADER_CAPACITY],
    len: u8,
}

impl Header {
    /// The header announcing a TCP connection from `source` (the client) to `destination` (the
    /// address the client connected to). IPv4-mapped IPv6 addresses are sent as IPv4; if the two
    /// are still of different families, the IPv4 one is sent as IPv4-mapped IPv6 (TCP6, AF_INET6),
    /// as haproxy does. Flow info and scope id are not part of the protocol and are dropped.
    pub fn new(version: Version, source: SocketAddr, destination: SocketAddr) -> Header {
        let pair = same_family(source, destination);
        match version {
            Version::V1 => v1(pair),
            Version::V2 => v2(pair),
        }
    }

    /// The header for a connection whose addresses are not known: `PROXY UNKNOWN\r\n`, or v2
    /// LOCAL with AF_UNSPEC and no address block. The receiver then uses the real connection's
    /// addresses (or refuses it). v2 says LOCAL, not PROXY with AF_UNSPEC, because that is what
    /// haproxy sends in this case and the only form it accepts: haproxy (2.6, and its current
    /// source) refuses PROXY with AF_UNSPEC as "an invalid PROXY protocol header".
    pub fn unknown(version: Version) -> Header {
        let mut h = Header::empty();
        match version {
            Version::V1 => h.push(b"PROXY UNKNOWN\r\n"),
            Version::V2 => {
                h.push(&V2_SIGNATURE);
                h.push(&[0x20, 0x00, 0, 0]); // version 2, LOCAL; AF_UNSPEC; no address block
            }
        }
        h
    }

    /// The bytes to send, first on the inward connection.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    fn empty() -> Header {
        Header {
            bytes: [0; HEADER_CAPACITY],
            len: 0,
        }
    }

    fn push(&mut self, bytes: &[u8]) {
        let at = usize::from(self.len);
        // Every header built here fits by construction (at most 104 bytes); a panic would be a bug.
        self.bytes[at..at + bytes.len()].copy_from_slice(bytes);
        self.len = u8::try_from(at + bytes.len()).expect("header length fits in u8");
    }
}

impl PartialEq for Header {
    fn eq(&self, other: &Header) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for Header {}

impl fmt::Debug for Header {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Header(\"{}\")", self.as_bytes().escape_ascii())
    }
}

impl Write for Header {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        if usize::from(self.len) + s.len() > HEADER_CAPACITY {
            return Err(fmt::Error);
        }
        self.push(s.as_bytes());
        Ok(())
    }
}

/// Both endpoints in one family, the only shape the protocol can carry.
enum Pair {
    V4(SocketAddrV4, SocketAddrV4),
    V6(SocketAddrV6, SocketAddrV6),
}

/// Mapped IPv6 addresses are unmapped first; then, if one side is IPv4 and the other IPv6, the
/// IPv4 one is widened to IPv4-mapped IPv6 (haproxy's make_proxy_line does the same rather than
/// fall back to UNKNOWN, which loses both addresses and which some receivers refuse).
fn same_family(source: SocketAddr, destination: SocketAddr) -> Pair {
    let v6 = |ip: IpAddr, port| match ip {
        IpAddr::V4(a) => SocketAddrV6::new(a.to_ipv6_mapped(), port, 0, 0),
        IpAddr::V6(a) => SocketAddrV6::new(a, port, 0, 0),
    };
    let (s, d) = (source.ip().to_canonical(), destination.ip().to_canonical());
    match (s, d) {
        (IpAddr::V4(a), IpAddr::V4(b)) => Pair::V4(
            SocketAddrV4::new(a, source.port()),
            SocketAddrV4::new(b, destination.port()),
        ),
        _ => Pair::V6(v6(s, source.port()), v6(d, destination.port())),
    }
}

fn v1(pair: Pair) -> Header {
    let mut h = Header::empty();
    // std prints IPv6 in RFC 5952 form (at most 39 characters, or "::ffff:a.b.c.d" for a widened
    // IPv4), which inet_pton-based receivers such as haproxy accept; the line is at most 104 bytes.
    let written = match pair {
        Pair::V4(s, d) => write!(h, "PROXY TCP4 {} {} {} {}\r\n", s.ip(), d.ip(), s.port(), d.port()),
        Pair::V6(s, d) => write!(h, "PROXY TCP6 {} {} {} {}\r\n", s.ip(), d.ip(), s.port(), d.port()),
    };
    written.expect("a v1 line fits in 108 bytes");
    h
}

fn v2(pair: Pair) -> Header {
    let mut h = Header::empty();
    h.push(&V2_SIGNATURE);
    let (sport, dport) = match pair {
        Pair::V4(s, d) => {
            h.push(&[0x21, 0x11, 0, 12]); // version 2, PROXY; TCP over IPv4; 12 address bytes
            h.push(&s.ip().octets());
            h.push(&d.ip().octets());
            (s.port(), d.port())
        }
        Pair::V6(s, d) => {
            h.push(&[0x21, 0x21, 0, 36]); // version 2, PROXY; TCP over IPv6; 36 address bytes
            h.push(&s.ip().octets());
            h.push(&d.ip().octets());
            (s.port(), d.port())
        }
    };
    h.push(&sport.to_be_bytes());
    h.push(&dport.to_be_bytes());
    h
}
