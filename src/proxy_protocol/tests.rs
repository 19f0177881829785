//! The codec against the spec's own examples and malformed variants, and the encoder's exact
//! bytes; the helpers that build and check headers, shared with `tests_interop`.

use super::*;
use std::net::{Ipv6Addr, SocketAddr};

pub(super) fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

pub(super) fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

pub(super) fn done(header_len: usize, version: Version, src: &str, dst: &str) -> Parse {
    Parse::Done {
        header_len,
        version,
        command: Command::Proxy,
        source: Some(sa(src)),
        destination: Some(sa(dst)),
    }
}

pub(super) fn done_without_addresses(header_len: usize, version: Version, command: Command) -> Parse {
    Parse::Done {
        header_len,
        version,
        command,
        source: None,
        destination: None,
    }
}

/// Parses `bytes` at every length: Incomplete for each proper prefix of the header, `expected`
/// for the header alone and with data after it.
pub(super) fn assert_header(bytes: &[u8], expected: Parse) {
    let Parse::Done { header_len, .. } = expected else {
        panic!("expected must be Done")
    };
    for k in 0..header_len {
        assert_eq!(
            parse(&bytes[..k]),
            Parse::Incomplete,
            "prefix of {k} bytes of {:?}",
            bytes.escape_ascii()
        );
    }
    assert_eq!(parse(&bytes[..header_len]), expected);
    assert_eq!(parse(bytes), expected);
    let mut more = bytes.to_vec();
    more.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
    assert_eq!(parse(&more), expected);
}

pub(super) fn v2(ver_cmd: u8, family: u8, body: &[u8]) -> Vec<u8> {
    let mut h = V2_SIGNATURE.to_vec();
    h.push(ver_cmd);
    h.push(family);
    h.extend_from_slice(&u16::try_from(body.len()).unwrap().to_be_bytes());
    h.extend_from_slice(body);
    h
}

pub(super) fn tlv(kind: u8, value: &[u8]) -> Vec<u8> {
    let mut t = vec![kind];
    t.extend_from_slice(&u16::try_from(value.len()).unwrap().to_be_bytes());
    t.extend_from_slice(value);
    t
}

pub(super) const IPV4_BLOCK: [u8; 12] = [192, 0, 2, 1, 198, 51, 100, 2, 0xDC, 0x04, 0x01, 0xBB]; // :56324 → :443

/// Appends a CRC32C TLV and fills it in as a sender must (spec 2.2.3).
pub(super) fn with_crc(mut h: Vec<u8>) -> Vec<u8> {
    h.extend_from_slice(&tlv(0x03, &[0; 4]));
    let len = u16::from_be_bytes([h[14], h[15]]) + 7;
    h[14..16].copy_from_slice(&len.to_be_bytes());
    let mut crc = crc32c::Crc32c::new();
    crc.update(&h);
    let at = h.len() - 4;
    h[at..].copy_from_slice(&crc.finish().to_be_bytes());
    h
}

// --- The spec's examples (section 2.1 and 2.2) ---

#[test]
fn spec_v1_maximum_lines() {
    let tcp4 = b"PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n";
    assert_eq!(tcp4.len(), 56);
    assert_header(
        tcp4,
        done(56, Version::V1, "255.255.255.255:65535", "255.255.255.255:65535"),
    );

    let f = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
    let tcp6 = format!("PROXY TCP6 {f} {f} 65535 65535\r\n");
    assert_eq!(tcp6.len(), 104);
    assert_header(
        tcp6.as_bytes(),
        done(104, Version::V1, &format!("[{f}]:65535"), &format!("[{f}]:65535")),
    );

    assert_header(
        b"PROXY UNKNOWN\r\n",
        done_without_addresses(15, Version::V1, Command::Proxy),
    );

    let worst = format!("PROXY UNKNOWN {f} {f} 65535 65535\r\n");
    assert_eq!(worst.len(), V1_MAX_LEN);
    assert_header(
        worst.as_bytes(),
        done_without_addresses(107, Version::V1, Command::Proxy),
    );
}

#[test]
fn spec_v1_example_before_http() {
    let stream = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\nGET / HTTP/1.1\r\nHost: 192.168.0.11\r\n\r\n";
    let expected = done(47, Version::V1, "192.168.0.1:56324", "192.168.0.11:443");
    assert_header(stream, expected);
    assert!(stream[47..].starts_with(b"GET /"));
}

#[test]
fn spec_v2_signature_and_addresses() {
    assert_eq!(
        V2_SIGNATURE,
        [0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A]
    );
    assert_header(
        &v2(0x21, 0x11, &IPV4_BLOCK),
        done(28, Version::V2, "192.0.2.1:56324", "198.51.100.2:443"),
    );

    let mut block = Vec::new();
    block.extend_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
    block.extend_from_slice(&"2001:db8::2".parse::<Ipv6Addr>().unwrap().octets());
    block.extend_from_slice(&[0xFF, 0xFF, 0, 0]);
    assert_header(
        &v2(0x21, 0x21, &block),
        done(52, Version::V2, "[2001:db8::1]:65535", "[2001:db8::2]:0"),
    );
}

#[test]
fn v2_without_tcp_addresses() {
    // LOCAL: addresses ignored, even when present (the spec: never assume a zero length).
    assert_header(
        &v2(0x20, 0x00, &[]),
        done_without_addresses(16, Version::V2, Command::Local),
    );
    assert_header(
        &v2(0x20, 0x11, &IPV4_BLOCK),
        done_without_addresses(28, Version::V2, Command::Local),
    );
    // PROXY with AF_UNSPEC, UDP or AF_UNIX: proxied, but no TCP addresses to use.
    assert_header(
        &v2(0x21, 0x00, &[]),
        done_without_addresses(16, Version::V2, Command::Proxy),
    );
    assert_header(
        &v2(0x21, 0x12, &IPV4_BLOCK),
        done_without_addresses(28, Version::V2, Command::Proxy),
    );
    assert_header(
        &v2(0x21, 0x31, &[b'/'; 216]),
        done_without_addresses(232, Version::V2, Command::Proxy),
    );
}

#[test]
fn v2_tlvs_are_skipped() {
    let mut body = IPV4_BLOCK.to_vec();
    body.extend(tlv(0x01, b"h2")); // PP2_TYPE_ALPN
    body.extend(tlv(0x02, b"example.com")); // PP2_TYPE_AUTHORITY
    body.extend(tlv(0x04, b"")); // PP2_TYPE_NOOP, empty
    body.extend(tlv(0x05, &[7; 128])); // PP2_TYPE_UNIQUE_ID
    body.extend(tlv(0xE0, &[1, 2, 3])); // custom range
    let h = with_crc(v2(0x21, 0x11, &body));
    assert_eq!(h.len(), 16 + 12 + 5 + 14 + 3 + 131 + 6 + 7);
    assert_header(&h, done(h.len(), Version::V2, "192.0.2.1:56324", "198.51.100.2:443"));
    // TLVs after a LOCAL's empty address block (haproxy's health checks with unique-id).
    let local = with_crc(v2(0x20, 0x00, &tlv(0x05, b"abc")));
    assert_header(&local, done_without_addresses(local.len(), Version::V2, Command::Local));
}

#[test]
fn v2_crc32c_is_checked() {
    let good = with_crc(v2(0x21, 0x11, &IPV4_BLOCK));
    assert!(matches!(parse(&good), Parse::Done { .. }));
    for bit in [0, 8 * 20, 8 * good.len() - 1] {
        let mut bad = good.clone();
        bad[bit / 8] ^= 1 << (bit % 8);
        // A flip in the signature or the version byte fails earlier; any other must fail the CRC.
        if bit / 8 >= 16 {
            assert_eq!(parse(&bad), Parse::Invalid(Invalid::V2Checksum), "bit {bit}");
        } else {
            assert!(matches!(parse(&bad), Parse::Invalid(_)));
        }
    }
    let short_crc = v2(0x21, 0x11, &[&IPV4_BLOCK[..], &tlv(0x03, &[0; 3])].concat());
    assert_eq!(parse(&short_crc), Parse::Invalid(Invalid::V2Checksum));
    let twice = with_crc(with_crc(v2(0x21, 0x11, &IPV4_BLOCK)));
    assert_eq!(parse(&twice), Parse::Invalid(Invalid::V2Checksum));
}

// --- Malformed input ---

#[test]
fn v1_malformed() {
    let cases: &[(&[u8], Invalid)] = &[
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 80\r\n", Invalid::V1Port),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 80 99999\r\n", Invalid::V1Port),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 080 80\r\n", Invalid::V1Port),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 +80 80\r\n", Invalid::V1Port),
        (b"PROXY TCP6 ::1 ::2 +80 80\r\n", Invalid::V1Port),
        (b"PROXY TCP4 01.2.3.4 5.6.7.8 80 80\r\n", Invalid::V1Address),
        (b"PROXY TCP4 1.2.3.4 5.6.7.08 80 80\r\n", Invalid::V1Address),
        (b"PROXY TCP4 1.2.3.256 5.6.7.8 80 80\r\n", Invalid::V1Address),
        (b"PROXY TCP4 1.2.3 5.6.7.8 80 80\r\n", Invalid::V1Address),
        (b"PROXY TCP4 ::1 ::1 80 80\r\n", Invalid::V1Address),
        (b"PROXY TCP6 1.2.3.4 5.6.7.8 80 80\r\n", Invalid::V1Address),
        (b"PROXY TCP6 1::2::3 ::1 80 80\r\n", Invalid::V1Address),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 80\r\n", Invalid::V1Syntax),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 80 80 80\r\n", Invalid::V1Syntax),
        (b"PROXY TCP4 1.2.3.4  5.6.7.8 80 80\r\n", Invalid::V1Syntax),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 80 80 \r\n", Invalid::V1Syntax),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 80 80\n", Invalid::V1Syntax),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 80 80\rX", Invalid::V1Syntax),
        (b"PROXY UNKNOWN\n", Invalid::V1Syntax),
        (b"PROXY UNKNOWN x\ny\r\n", Invalid::V1Syntax),
        (b"PROXY UNKNOWNX\r\n", Invalid::V1Protocol),
        (b"PROXY UDP4 1.2.3.4 5.6.7.8 80 80\r\n", Invalid::V1Protocol),
        (b"PROXY tcp4 1.2.3.4 5.6.7.8 80 80\r\n", Invalid::V1Protocol),
        (b"PROXY \r\n", Invalid::V1Protocol),
        (b"PROXY TCP4\r\n", Invalid::V1Syntax),
        (b"PROXY  TCP4 1.2.3.4 5.6.7.8 80 80\r\n", Invalid::V1Protocol),
        (b"PROXYTCP4 1.2.3.4 5.6.7.8 80 80\r\n", Invalid::Signature),
        (b"proxy TCP4 1.2.3.4 5.6.7.8 80 80\r\n", Invalid::Signature),
    ];
    for (bytes, why) in cases {
        assert_eq!(parse(bytes), Parse::Invalid(*why), "{:?}", bytes.escape_ascii());
    }
}

#[test]
fn v1_without_crlf_in_107_bytes() {
    // Spec: no CRLF in the first 107 characters makes the line invalid, even an UNKNOWN one.
    let mut line = b"PROXY UNKNOWN ".to_vec();
    line.resize(105, b'f');
    assert_eq!(parse(&line), Parse::Incomplete);
    line.extend_from_slice(b"\r\n"); // 107 bytes: the longest allowed
    assert!(matches!(parse(&line), Parse::Done { header_len: 107, .. }));
    line.truncate(105);
    line.push(b'f'); // the CR could now come at byte 107 at the earliest: too late
    assert_eq!(parse(&line), Parse::Invalid(Invalid::V1TooLong));
    line.extend_from_slice(b"\r\n");
    assert_eq!(parse(&line), Parse::Invalid(Invalid::V1TooLong));
}

#[test]
fn v1_garbage_is_refused_before_the_crlf() {
    assert_eq!(parse(b"PROXY TCP5"), Parse::Invalid(Invalid::V1Protocol));
    assert_eq!(parse(b"PROXY TCP4 1.2.3.x"), Parse::Invalid(Invalid::V1Syntax));
    assert_eq!(parse(b"PROXY TCP4 1.2.3.4  "), Parse::Invalid(Invalid::V1Syntax));
    assert_eq!(parse(b"PROXY TCP6 ::g"), Parse::Invalid(Invalid::V1Syntax));
    assert_eq!(
        parse(b"PROXY TCP4 1.2.3.4 5.6.7.8 80 80 "),
        Parse::Invalid(Invalid::V1Syntax)
    );
    assert_eq!(parse(b"PROXY TCP4 1.2.3.4\n"), Parse::Invalid(Invalid::V1Syntax));
    // Still a possible prefix: wait.
    assert_eq!(parse(b"PROXY TCP4 1.2.3.4 5.6.7.8 80 "), Parse::Incomplete);
    assert_eq!(parse(b"PROXY UNKNOWN whatever here"), Parse::Incomplete);
}

#[test]
fn v2_malformed() {
    let cases: &[(Vec<u8>, Invalid)] = &[
        (v2(0x11, 0x11, &IPV4_BLOCK), Invalid::V2Version),
        (v2(0x31, 0x11, &IPV4_BLOCK), Invalid::V2Version),
        (v2(0x22, 0x11, &IPV4_BLOCK), Invalid::V2Command),
        (v2(0x2F, 0x11, &IPV4_BLOCK), Invalid::V2Command),
        (v2(0x21, 0x41, &IPV4_BLOCK), Invalid::V2Family),
        (v2(0x21, 0x13, &IPV4_BLOCK), Invalid::V2Family),
        (v2(0x21, 0x10, &IPV4_BLOCK), Invalid::V2Family),
        (v2(0x21, 0x01, &IPV4_BLOCK), Invalid::V2Family),
        (v2(0x21, 0x11, &IPV4_BLOCK[..11]), Invalid::V2Length),
        (v2(0x21, 0x21, &[0; 35]), Invalid::V2Length),
        (v2(0x21, 0x31, &[0; 215]), Invalid::V2Length),
        (v2(0x20, 0x21, &IPV4_BLOCK), Invalid::V2Length),
        (v2(0x21, 0x11, &[&IPV4_BLOCK[..], &[1]].concat()), Invalid::V2Tlv),
        (v2(0x21, 0x11, &[&IPV4_BLOCK[..], &[1, 0]].concat()), Invalid::V2Tlv),
        (
            v2(0x21, 0x11, &[&IPV4_BLOCK[..], &[1, 0, 3, b'h', b'2']].concat()),
            Invalid::V2Tlv,
        ),
        (
            v2(0x21, 0x11, &[&IPV4_BLOCK[..], &tlv(1, b"h2"), &[0]].concat()),
            Invalid::V2Tlv,
        ),
    ];
    for (bytes, why) in cases {
        assert_eq!(parse(bytes), Parse::Invalid(*why), "{bytes:02x?}");
    }
    // Judged as soon as the offending byte is in, not when the whole header is.
    assert_eq!(
        parse(&v2(0x11, 0x11, &IPV4_BLOCK)[..13]),
        Parse::Invalid(Invalid::V2Version)
    );
    assert_eq!(
        parse(&v2(0x21, 0x41, &IPV4_BLOCK)[..14]),
        Parse::Invalid(Invalid::V2Family)
    );
    assert_eq!(
        parse(&v2(0x21, 0x11, &IPV4_BLOCK[..11])[..16]),
        Parse::Invalid(Invalid::V2Length)
    );
}

#[test]
fn v2_length_cap() {
    let mut fixed = V2_SIGNATURE.to_vec();
    fixed.extend_from_slice(&[0x21, 0x11, 0xFF, 0xFF]); // 16 + 65535: allowed by the spec
    assert_eq!(parse(&fixed), Parse::Invalid(Invalid::Oversized));
    assert_eq!(parse_with_limit(&fixed, 16 + 65535), Parse::Incomplete);
    let at_cap = v2(
        0x21,
        0x11,
        &[&IPV4_BLOCK[..], &tlv(0x04, &[0; DEFAULT_MAX_HEADER_LEN - 31])].concat(),
    );
    assert_eq!(at_cap.len(), DEFAULT_MAX_HEADER_LEN);
    assert!(matches!(parse(&at_cap), Parse::Done { .. }));
    let over = v2(
        0x21,
        0x11,
        &[&IPV4_BLOCK[..], &tlv(0x04, &[0; DEFAULT_MAX_HEADER_LEN - 30])].concat(),
    );
    assert_eq!(parse(&over[..16]), Parse::Invalid(Invalid::Oversized));
    assert_eq!(parse_with_limit(&at_cap, 64), Parse::Invalid(Invalid::Oversized));
}

#[test]
fn signature_is_judged_from_the_first_byte() {
    for ok in [
        &b""[..],
        b"P",
        b"PROXY",
        b"PROXY ",
        b"\r",
        b"\r\n\r\n\0\r\nQUI",
        b"\r\n\r\n\0\r\nQUIT\n",
    ] {
        assert!(could_be_header(ok), "{:?}", ok.escape_ascii());
        assert_eq!(parse(ok), Parse::Incomplete);
    }
    let tls_hello = [0x16, 0x03, 0x01, 0x02, 0x00];
    for bad in [
        &b"GET / HTTP/1.1\r\n"[..],
        b"SSH-2.0-x",
        b"PROXX",
        b"PROXY\r\n",
        b"\r\n\r\n\r\n",
        b"\n",
        &tls_hello,
    ] {
        assert!(!could_be_header(bad), "{:?}", bad.escape_ascii());
        assert_eq!(parse(bad), Parse::Invalid(Invalid::Signature));
    }
}

// --- Encoding ---

#[test]
fn encode_exact_bytes() {
    let (c4, s4) = (sa("192.168.0.1:56324"), sa("192.168.0.11:443"));
    assert_eq!(
        Header::new(Version::V1, c4, s4).as_bytes(),
        b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n"
    );
    assert_eq!(
        Header::new(Version::V2, c4, s4).as_bytes(),
        &v2(0x21, 0x11, &[192, 168, 0, 1, 192, 168, 0, 11, 0xDC, 0x04, 0x01, 0xBB])[..]
    );
    let (c6, s6) = (sa("[2001:db8::1]:1"), sa("[2001:db8:0:0:1::2]:65535"));
    assert_eq!(
        Header::new(Version::V1, c6, s6).as_bytes(),
        b"PROXY TCP6 2001:db8::1 2001:db8::1:0:0:2 1 65535\r\n"
    );
    let mut block = Vec::new();
    block.extend_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
    block.extend_from_slice(&"2001:db8:0:0:1::2".parse::<Ipv6Addr>().unwrap().octets());
    block.extend_from_slice(&[0, 1, 0xFF, 0xFF]);
    assert_eq!(Header::new(Version::V2, c6, s6).as_bytes(), &v2(0x21, 0x21, &block)[..]);
    assert_eq!(Header::unknown(Version::V1).as_bytes(), b"PROXY UNKNOWN\r\n");
    assert_eq!(Header::unknown(Version::V2).as_bytes(), &v2(0x20, 0x00, &[])[..]);
    assert_eq!(
        parse(Header::unknown(Version::V2).as_bytes()),
        done_without_addresses(16, Version::V2, Command::Local)
    );
}

#[test]
fn encode_maximum_lengths_fit() {
    let (a, b) = (
        sa("255.255.255.255:65535"),
        sa("[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535"),
    );
    assert_eq!(Header::new(Version::V1, a, a).as_bytes().len(), 56);
    assert_eq!(Header::new(Version::V1, b, b).as_bytes().len(), 104);
    assert_eq!(Header::new(Version::V2, a, a).as_bytes().len(), 28);
    assert_eq!(Header::new(Version::V2, b, b).as_bytes().len(), 52);
    // Widened IPv4 next to the longest IPv6.
    let w = Header::new(Version::V1, a, b);
    assert_eq!(
        w.as_bytes(),
        b"PROXY TCP6 ::ffff:255.255.255.255 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n"
    );
}

#[test]
fn encode_mixed_families() {
    // A dual-stack listener reports an IPv4 client, and its own address, as mapped IPv6.
    let (client, local) = (sa("[::ffff:203.0.113.7]:40000"), sa("[::ffff:192.0.2.1]:7005"));
    assert_eq!(
        Header::new(Version::V1, client, local).as_bytes(),
        b"PROXY TCP4 203.0.113.7 192.0.2.1 40000 7005\r\n"
    );
    assert_eq!(
        parse(Header::new(Version::V2, client, local).as_bytes()),
        done(28, Version::V2, "203.0.113.7:40000", "192.0.2.1:7005")
    );
    // One side really IPv6: the IPv4 side is widened, as haproxy does.
    let (client, local) = (sa("203.0.113.7:40000"), sa("[2001:db8::1]:7005"));
    assert_eq!(
        Header::new(Version::V1, client, local).as_bytes(),
        b"PROXY TCP6 ::ffff:203.0.113.7 2001:db8::1 40000 7005\r\n"
    );
    assert_eq!(
        parse(Header::new(Version::V2, client, local).as_bytes()),
        done(52, Version::V2, "[::ffff:203.0.113.7]:40000", "[2001:db8::1]:7005")
    );
    // Scope id and flow info are not part of the protocol.
    let scoped = SocketAddr::V6(std::net::SocketAddrV6::new("fe80::1".parse().unwrap(), 1, 7, 3));
    assert_eq!(
        Header::new(Version::V1, scoped, scoped).as_bytes(),
        b"PROXY TCP6 fe80::1 fe80::1 1 1\r\n"
    );
}

#[test]
fn header_is_copy_and_small() {
    fn copy<T: Copy>(t: T) -> T {
        t
    }
    let h = Header::new(Version::V1, sa("1.2.3.4:5"), sa("6.7.8.9:10"));
    assert_eq!(copy(h), h);
    assert!(std::mem::size_of::<Header>() <= HEADER_CAPACITY + 2);
}
