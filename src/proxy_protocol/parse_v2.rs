//! The v2 binary header (spec 2.2): signature, version/command, family/protocol, length, address
//! block, then TLVs up to the length. Each fixed byte is judged as soon as it arrives.

use super::crc32c::Crc32c;
use super::{Command, Invalid, Parse, V2_FIXED_LEN, V2_SIGNATURE, Version};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

const PP2_TYPE_CRC32C: u8 = 0x03;

/// `bytes` starts with the 12-byte signature.
pub(super) fn parse(bytes: &[u8], max_header_len: usize) -> Parse {
    match parse_inner(bytes, max_header_len) {
        Ok(Some(done)) => done,
        Ok(None) => Parse::Incomplete,
        Err(e) => Parse::Invalid(e),
    }
}

fn parse_inner(bytes: &[u8], max_header_len: usize) -> Result<Option<Parse>, Invalid> {
    let sig = V2_SIGNATURE.len();
    let Some(&ver_cmd) = bytes.get(sig) else {
        return Ok(None);
    };
    if ver_cmd >> 4 != 2 {
        return Err(Invalid::V2Version);
    }
    let command = match ver_cmd & 0x0F {
        0 => Command::Local,
        1 => Command::Proxy,
        _ => return Err(Invalid::V2Command),
    };
    let Some(&family) = bytes.get(sig + 1) else {
        return Ok(None);
    };
    // The spec's list of expected bytes; the other nibble pairings have no defined address block.
    let address_len = match family {
        0x00 => 0,          // UNSPEC
        0x11 | 0x12 => 12,  // TCP, UDP over IPv4
        0x21 | 0x22 => 36,  // TCP, UDP over IPv6
        0x31 | 0x32 => 216, // UNIX stream, datagram
        _ => return Err(Invalid::V2Family),
    };
    let Some(len) = bytes.get(sig + 2..V2_FIXED_LEN) else {
        return Ok(None);
    };
    let header_len = V2_FIXED_LEN + usize::from(u16::from_be_bytes([len[0], len[1]]));
    if header_len > max_header_len {
        return Err(Invalid::Oversized);
    }
    if header_len < V2_FIXED_LEN + address_len {
        return Err(Invalid::V2Length);
    }
    let Some(header) = bytes.get(..header_len) else {
        return Ok(None);
    };
    check_tlvs(header, V2_FIXED_LEN + address_len)?;

    // Only TCP addresses mean anything to a TCP forwarder; for the rest (and for LOCAL, whose
    // address block the spec says to ignore) the caller falls back to the real endpoints.
    let a = &header[V2_FIXED_LEN..];
    let addresses: Option<(SocketAddr, SocketAddr)> = match (command, family) {
        (Command::Proxy, 0x11) => Some((
            SocketAddrV4::new(Ipv4Addr::from(octets(&a[0..4])), port(&a[8..10])).into(),
            SocketAddrV4::new(Ipv4Addr::from(octets(&a[4..8])), port(&a[10..12])).into(),
        )),
        (Command::Proxy, 0x21) => Some((
            SocketAddrV6::new(Ipv6Addr::from(octets(&a[0..16])), port(&a[32..34]), 0, 0).into(),
            SocketAddrV6::new(Ipv6Addr::from(octets(&a[16..32])), port(&a[34..36]), 0, 0).into(),
        )),
        _ => None,
    };
    Ok(Some(Parse::Done {
        header_len,
        version: Version::V2,
        command,
        source: addresses.map(|a| a.0),
        destination: addresses.map(|a| a.1),
    }))
}

/// The TLVs from `start` must tile the rest of the header exactly; a CRC32C TLV, if any, must
/// match (spec 2.2.3: a receiver that supports it MUST check it). Other types are skipped.
fn check_tlvs(header: &[u8], start: usize) -> Result<(), Invalid> {
    let mut at = start;
    let mut crc_at = None;
    while at < header.len() {
        let Some(&[kind, hi, lo]) = header.get(at..at + 3) else {
            return Err(Invalid::V2Tlv);
        };
        let value = at + 3;
        let end = value + usize::from(u16::from_be_bytes([hi, lo]));
        if end > header.len() {
            return Err(Invalid::V2Tlv);
        }
        if kind == PP2_TYPE_CRC32C {
            if end - value != 4 || crc_at.is_some() {
                return Err(Invalid::V2Checksum);
            }
            crc_at = Some(value);
        }
        at = end;
    }
    if let Some(v) = crc_at {
        // Computed over the whole header with the checksum field read as zeros; sent big-endian.
        let mut crc = Crc32c::new();
        crc.update(&header[..v]);
        crc.update(&[0; 4]);
        crc.update(&header[v + 4..]);
        if crc.finish() != u32::from_be_bytes(octets(&header[v..v + 4])) {
            return Err(Invalid::V2Checksum);
        }
    }
    Ok(())
}

fn octets<const N: usize>(bytes: &[u8]) -> [u8; N] {
    bytes.try_into().expect("slice of the array's length")
}

fn port(bytes: &[u8]) -> u16 {
    u16::from_be_bytes(octets(bytes))
}
