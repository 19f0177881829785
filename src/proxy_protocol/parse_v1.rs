//! The v1 line (spec 2.1): `PROXY TCP4|TCP6 SRC DST SPORT DPORT\r\n` or `PROXY UNKNOWN...\r\n`.
//!
//! Before the CRLF arrives, what is there is checked as far as it goes (protocol name, characters,
//! fields), so that garbage is refused early; once the CRLF is in, the line is parsed strictly.
//! Every check made early is also made on the whole line, so a verdict never flips.

use super::{Command, Invalid, Parse, V1_MAX_LEN, V1_PREFIX, Version};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::str::FromStr;

/// `bytes` starts with `PROXY `.
pub(super) fn parse(bytes: &[u8]) -> Parse {
    // The CR must be at index 105 at the latest, for the line with its LF to fit in 107 bytes.
    let window = &bytes[..bytes.len().min(V1_MAX_LEN - 1)];
    let Some(cr) = window.iter().position(|&b| b == b'\r') else {
        if bytes.len() >= V1_MAX_LEN - 1 {
            return Parse::Invalid(Invalid::V1TooLong);
        }
        return match check_partial(&bytes[V1_PREFIX.len()..]) {
            Ok(()) => Parse::Incomplete,
            Err(e) => Parse::Invalid(e),
        };
    };
    let body = &bytes[V1_PREFIX.len()..cr];
    match bytes.get(cr + 1) {
        None => match check_partial(body) {
            Ok(()) => Parse::Incomplete,
            Err(e) => Parse::Invalid(e),
        },
        Some(b'\n') => match parse_body(body) {
            Ok(addresses) => Parse::Done {
                header_len: cr + 2,
                version: Version::V1,
                command: Command::Proxy,
                source: addresses.map(|a| a.0),
                destination: addresses.map(|a| a.1),
            },
            Err(e) => Parse::Invalid(e),
        },
        Some(_) => Parse::Invalid(Invalid::V1Syntax), // a lone CR does not end the line
    }
}

/// The part of a line after `PROXY ` that has arrived, without its CR: can it still be valid?
fn check_partial(body: &[u8]) -> Result<(), Invalid> {
    if body.contains(&b'\n') {
        return Err(Invalid::V1Syntax); // a lone LF does not end the line either
    }
    let Some(space) = body.iter().position(|&b| b == b' ') else {
        // The protocol name, still arriving.
        return match [&b"TCP4"[..], b"TCP6", b"UNKNOWN"].iter().any(|p| p.starts_with(body)) {
            true => Ok(()),
            false => Err(Invalid::V1Protocol),
        };
    };
    let allowed: fn(u8) -> bool = match &body[..space] {
        b"UNKNOWN" => return Ok(()), // anything up to the CRLF is to be ignored
        b"TCP4" => |b| b.is_ascii_digit() || b == b'.' || b == b' ',
        b"TCP6" => |b| b.is_ascii_hexdigit() || b == b':' || b == b'.' || b == b' ',
        _ => return Err(Invalid::V1Protocol),
    };
    let fields = &body[space + 1..];
    if !fields.iter().all(|&b| allowed(b)) {
        return Err(Invalid::V1Syntax);
    }
    // Four fields, one space apart; only the last one present may be unfinished (empty).
    let mut count = 0;
    let mut split = fields.split(|&b| b == b' ').peekable();
    while let Some(field) = split.next() {
        count += 1;
        if count > 4 || (field.is_empty() && split.peek().is_some()) {
            return Err(Invalid::V1Syntax);
        }
    }
    Ok(())
}

/// The whole line after `PROXY `, without CRLF: the two addresses, or none for UNKNOWN.
fn parse_body(body: &[u8]) -> Result<Option<(SocketAddr, SocketAddr)>, Invalid> {
    let mut fields = body.split(|&b| b == b' ');
    let protocol = fields.next().unwrap_or_default();
    let addresses = match protocol {
        b"UNKNOWN" if body.contains(&b'\n') => return Err(Invalid::V1Syntax),
        b"UNKNOWN" => return Ok(None),
        b"TCP4" => {
            let [src, dst, sport, dport] = four(&mut fields)?;
            let (src, dst) = (address::<Ipv4Addr>(src)?, address::<Ipv4Addr>(dst)?);
            let (sport, dport) = (port(sport)?, port(dport)?);
            (
                SocketAddrV4::new(src, sport).into(),
                SocketAddrV4::new(dst, dport).into(),
            )
        }
        b"TCP6" => {
            let [src, dst, sport, dport] = four(&mut fields)?;
            let (src, dst) = (address::<Ipv6Addr>(src)?, address::<Ipv6Addr>(dst)?);
            let (sport, dport) = (port(sport)?, port(dport)?);
            (
                SocketAddrV6::new(src, sport, 0, 0).into(),
                SocketAddrV6::new(dst, dport, 0, 0).into(),
            )
        }
        _ => return Err(Invalid::V1Protocol),
    };
    Ok(Some(addresses))
}

fn four<'a>(fields: &mut impl Iterator<Item = &'a [u8]>) -> Result<[&'a [u8]; 4], Invalid> {
    let mut out = [&[][..]; 4];
    for slot in &mut out {
        *slot = fields.next().ok_or(Invalid::V1Syntax)?;
    }
    match fields.next() {
        None => Ok(out),
        Some(_) => Err(Invalid::V1Syntax),
    }
}

/// std's parsers are the canonical forms the spec asks for: IPv4 as four decimals without leading
/// zeros; IPv6 as hex groups with at most one `::`, or with a dotted IPv4 tail, which is what
/// inet_ntop (and so haproxy) writes for mapped addresses.
fn address<A: FromStr>(field: &[u8]) -> Result<A, Invalid> {
    std::str::from_utf8(field)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or(Invalid::V1Address)
}

/// A decimal from 0 to 65535, without sign or leading zeros (which `u16::from_str` would accept).
fn port(field: &[u8]) -> Result<u16, Invalid> {
    let digits = !field.is_empty() && field.len() <= 5 && field.iter().all(u8::is_ascii_digit);
    if !digits || (field.len() > 1 && field[0] == b'0') {
        return Err(Invalid::V1Port);
    }
    let n = field.iter().fold(0u32, |n, &d| n * 10 + u32::from(d - b'0'));
    u16::try_from(n).map_err(|_| Invalid::V1Port)
}
